-- A stored prompt embedding of a run, matched by prompt text or label name (case-insensitive).
-- internal
-- param run_id VARCHAR: the run
-- param text VARCHAR: prompt or label
SELECT prompt, embedding FROM text_embeddings
WHERE run_id = $run_id AND (lower(prompt) = lower($text) OR lower(label) = lower($text))
ORDER BY (lower(prompt) = lower($text)) DESC, (prompt = label) DESC
LIMIT 1;
