-- Every stored Grad-CAM figure of a dataset's runs (localisation, faithfulness, sanity check).
-- internal
-- param dataset VARCHAR: the dataset's name
SELECT m.run_id, m.split, m.metric, m.label, m.value, m.ci_low, m.ci_high, m.n_resamples_skipped, m.params
FROM metrics m
JOIN runs r USING (run_id)
JOIN datasets d ON d.dataset_id = r.dataset_id
WHERE d.name = $dataset AND (m.metric LIKE 'gradcam.%' OR m.metric LIKE 'localisation.%' OR m.metric LIKE 'grounding.%')
ORDER BY m.run_id, m.split, m.metric, m.label NULLS FIRST;
