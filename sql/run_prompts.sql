-- The prompts a run stored text embeddings for.
-- internal
-- param run_id VARCHAR: the run
SELECT label, prompt, embedding FROM text_embeddings WHERE run_id = $run_id;
