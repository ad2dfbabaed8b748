-- Report embeddings of one run's samples in one split, in no particular order (streamed in batches).
-- internal
-- param run_id VARCHAR: the run
-- param split VARCHAR: the split
SELECT e.sample_id, e.embedding
FROM report_embeddings e JOIN samples s ON s.sample_id = e.sample_id
WHERE e.run_id = $run_id AND s.split = $split;
