-- The stored AUROC and F1 (per label, and their macro means) of every complete zs run for one split, with
-- what makes zs runs one prompt sweep (dataset, model weights, preprocessing, encoding precision and the
-- protocol they were extracted under) and each run's prompt style; oldest run first. A run that holds only
-- prompt-sensitivity rows on the split comes with metric and value NULL (its rows are cleared on refresh).
-- internal
-- param split VARCHAR: the split analysed
SELECT r.run_id, r.prompt_set, r.dataset_id, d.name AS dataset, r.model_id, r.model_sha256,
       r.protocol AS run_protocol, json_extract_string(r.config, '$.preprocess_key') AS preprocess_key,
       json_extract_string(r.config, '$.encode_precision') AS encode_precision,
       m.protocol, CASE WHEN m.metric IN ('auroc', 'f1', 'macro_auroc', 'macro_f1') THEN m.metric END AS metric,
       m.label, CASE WHEN m.metric IN ('auroc', 'f1', 'macro_auroc', 'macro_f1') THEN m.value END AS value
FROM runs r
JOIN datasets d USING (dataset_id)
JOIN metrics m USING (run_id)
WHERE r.status = 'complete' AND r.mode = 'zs' AND r.prompt_set IS NOT NULL AND m.split = $split
  AND (m.metric IN ('auroc', 'f1', 'macro_auroc', 'macro_f1') OR starts_with(m.metric, 'prompt_sensitivity.'))
ORDER BY r.finished_at, r.run_id;
