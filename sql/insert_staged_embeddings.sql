-- Append a run's staged image embeddings (registered as _staged) that it does not have yet; idempotent.
-- internal
-- param run_id VARCHAR: the run the chunk was staged for (rows of any other run in it are ignored)
INSERT INTO image_embeddings
SELECT $run_id, s.sample_id, s.embedding FROM _staged s
WHERE s.run_id = $run_id AND NOT EXISTS (
    SELECT 1 FROM image_embeddings e WHERE e.run_id = $run_id AND e.sample_id = s.sample_id
);
