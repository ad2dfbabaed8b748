-- The sample ids of one run (the samples it has an image embedding for), ordered.
-- internal
-- param run_id VARCHAR: the run
SELECT sample_id FROM image_embeddings WHERE run_id = $run_id ORDER BY sample_id;
