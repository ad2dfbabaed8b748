-- Remove one run's figures for one protocol and split before they are written again.
-- internal
-- param run_id VARCHAR: the run
DELETE FROM metrics WHERE run_id = $run_id AND protocol = $protocol AND split = $split;
