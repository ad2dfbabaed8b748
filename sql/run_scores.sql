-- One run's scores with each sample's split and whether the label is positive (value = 1).
-- param run_id VARCHAR: the run
SELECT sc.sample_id, s.split, sc.label, sc.logit, coalesce(l.value = 1, false) AS truth
FROM scores sc
JOIN samples s USING (sample_id)
LEFT JOIN labels l ON l.sample_id = sc.sample_id AND l.label = sc.label
WHERE sc.run_id = $run_id
ORDER BY sc.sample_id;
