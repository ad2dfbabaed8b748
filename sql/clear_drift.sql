-- Remove one run's domain-shift figures of one pair of sides before `embedstore drift` writes them again.
-- internal
-- param run_id VARCHAR: the run
-- param split VARCHAR: the pair of sides, as the figures store it (`FROM->TO`)
DELETE FROM metrics WHERE run_id = $run_id AND split = $split AND metric LIKE 'drift.%';
