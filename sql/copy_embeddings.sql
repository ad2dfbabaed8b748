-- Give a run the image embeddings of another run of the same encoder (lp reuse), replacing any it had.
-- internal
-- param run_id VARCHAR: the run receiving the rows
-- param source_run_id VARCHAR: the run they come from
DELETE FROM image_embeddings WHERE run_id = $run_id;
INSERT INTO image_embeddings
SELECT $run_id, sample_id, embedding FROM image_embeddings WHERE run_id = $source_run_id;
