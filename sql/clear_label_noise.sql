-- Remove one run's label-noise candidates and figures before `audit labels` writes them again.
-- internal
-- param run_id VARCHAR: the run
DELETE FROM metrics WHERE run_id = $run_id AND metric LIKE 'label_noise.%';
