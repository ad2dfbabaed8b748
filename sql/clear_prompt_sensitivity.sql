-- Remove one run's prompt-sensitivity figures for one protocol and split before its sweep's are written again.
-- internal
-- param run_id VARCHAR: the run
-- param protocol VARCHAR: the protocol analysed under
-- param split VARCHAR: the split analysed
DELETE FROM metrics WHERE run_id = $run_id AND protocol = $protocol AND split = $split
    AND starts_with(metric, 'prompt_sensitivity.');
