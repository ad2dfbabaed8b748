-- The split and uid (study) of every sample of one run's dataset, ordered by sample id.
-- param run_id VARCHAR: the run
SELECT s.sample_id, s.split, coalesce(s.uid, 'sample ' || s.sample_id) AS uid
FROM samples s JOIN runs r USING (dataset_id)
WHERE r.run_id = $run_id
ORDER BY s.sample_id;
