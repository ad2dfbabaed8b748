-- One run's scores as (sample, label column, logit, truth): `column` is the label's 0-based position
-- in $labels (the run's label order); truth is the label's derived `positive` (labels.positive).
-- param run_id VARCHAR: the run
SELECT sc.sample_id, list_position($labels, sc.label) - 1 AS label_column, sc.logit,
       coalesce(l.positive, false) AS truth
FROM scores sc
LEFT JOIN labels l ON l.sample_id = sc.sample_id AND l.label = sc.label
WHERE sc.run_id = $run_id;
