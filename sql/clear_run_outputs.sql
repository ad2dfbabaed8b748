-- Remove a run's scores, text and report embeddings before they are written again (final commit, resume).
-- internal
-- param run_id VARCHAR: the run
DELETE FROM scores WHERE run_id = $run_id;
DELETE FROM text_embeddings WHERE run_id = $run_id;
DELETE FROM report_embeddings WHERE run_id = $run_id;
