-- Sample ids of one run's rows in the table a FAISS index mirrors.
-- internal
-- param run_id VARCHAR: the run
SELECT sample_id FROM image_embeddings WHERE run_id = $run_id ORDER BY sample_id;
