-- The prompts a run's zero-shot head is built from: its prompt set, as its config lists them (the
-- sentences `gradcam validate` grounded are stored beside them and left out here: run_sentences).
-- internal
-- param run_id VARCHAR: the run
SELECT t.label, t.prompt, t.embedding
FROM text_embeddings t JOIN runs r USING (run_id)
WHERE t.run_id = $run_id AND list_contains(json_extract_string(r.config, '$.prompts[*]'), t.prompt);
