-- The images of a run's dataset for Grad-CAM: file, split and positive labels (CheXpert order), by sample id.
-- internal
-- param run_id VARCHAR: the run
SELECT s.sample_id, s.filename, s.path, s.image_sha256, s.split,
       coalesce(list(l.label ORDER BY n.position) FILTER (WHERE l.positive), []) AS positives
FROM samples s
LEFT JOIN labels l ON l.dataset_id = s.dataset_id AND l.sample_id = s.sample_id
LEFT JOIN label_names n ON n.label = l.label
WHERE s.dataset_id = (SELECT dataset_id FROM runs WHERE run_id = $run_id)
GROUP BY s.sample_id, s.filename, s.path, s.image_sha256, s.split
ORDER BY s.sample_id;
