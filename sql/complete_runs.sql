-- Complete runs of one dataset, oldest first.
-- param dataset VARCHAR: the dataset's name
SELECT r.run_id FROM runs r JOIN datasets d USING (dataset_id)
WHERE d.name = $dataset AND r.status = 'complete'
ORDER BY r.finished_at, r.run_id;
