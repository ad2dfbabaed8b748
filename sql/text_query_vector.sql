-- A stored prompt embedding of a run, matched by prompt text or label name (case-insensitive); only
-- the run's own prompts (its config's list), never a grounded annotation sentence.
-- internal
-- param run_id VARCHAR: the run
-- param text VARCHAR: prompt or label
SELECT t.prompt, t.embedding FROM text_embeddings t JOIN runs r USING (run_id)
WHERE t.run_id = $run_id AND list_contains(json_extract_string(r.config, '$.prompts[*]'), t.prompt)
  AND (lower(t.prompt) = lower($text) OR lower(t.label) = lower($text))
ORDER BY (lower(t.prompt) = lower($text)) DESC, (t.prompt = t.label) DESC, t.prompt
LIMIT 1;
