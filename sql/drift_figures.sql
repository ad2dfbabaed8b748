-- Stored domain-shift figures (`embedstore drift`): per run and pair of sides (split holds `FROM->TO`),
-- each figure with its interval and the sides' sizes, the newest pair first.
SELECT m.run_id, d.name AS dataset, m.split AS sides, json_extract_string(m.params, '$.from') AS from_side,
       json_extract_string(m.params, '$.to') AS to_side, m.metric, m.label, m.value, m.ci_low, m.ci_high,
       json_extract(m.params, '$.n_from')::BIGINT AS n_from, json_extract(m.params, '$.n_to')::BIGINT AS n_to,
       m.params, m.created_at
FROM metrics m
JOIN runs r USING (run_id)
JOIN datasets d ON d.dataset_id = r.dataset_id
WHERE m.metric LIKE 'drift.%'
ORDER BY m.created_at DESC, m.run_id, m.split, m.metric, m.label NULLS FIRST;
