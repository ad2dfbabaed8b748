-- A run's label-noise audit figures against the injected flips (`embedstore audit labels --truth`).
-- internal
-- param run_id VARCHAR: the audited run
SELECT metric, value FROM metrics
WHERE run_id = $run_id
  AND metric IN ('label_noise.precision_at_100', 'label_noise.recall_at_flips', 'label_noise.average_precision')
ORDER BY metric;
