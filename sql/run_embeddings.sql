-- Image embeddings of one run, ordered by sample id.
-- param run_id VARCHAR: the run
SELECT sample_id, embedding FROM image_embeddings WHERE run_id = $run_id ORDER BY sample_id;
