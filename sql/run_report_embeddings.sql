-- A run's report embeddings with their truncation flags and the context length they were cut to, in
-- sample order (a prompt sweep's later runs reuse the first run's instead of encoding the reports again).
-- internal
-- param run_id VARCHAR: the run
SELECT e.sample_id, e.embedding, e.truncated,
       json_extract(r.config, '$.report_embeddings.context_length')::INTEGER AS context_length
FROM report_embeddings e JOIN runs r USING (run_id)
WHERE e.run_id = $run_id
ORDER BY e.sample_id;
