-- Paired comparisons stored by `embedstore analyze --compare`: per protocol and split, run B against its
-- baseline run A, each figure's difference B − A with its paired 95 % bootstrap interval, both values and
-- DeLong's p-values for AUROC (raw, and Holm-adjusted across labels).
SELECT m.protocol, m.split, json_extract_string(m.params, '$.baseline') AS run_a, m.run_id AS run_b,
       ra.mode AS mode_a, rb.mode AS mode_b,
       substr(m.metric, 9) AS metric, m.label, json_extract(m.params, '$.a')::DOUBLE AS a,
       json_extract(m.params, '$.b')::DOUBLE AS b, m.value AS difference, m.ci_low, m.ci_high,
       json_extract(m.params, '$.delong_p')::DOUBLE AS delong_p,
       json_extract(m.params, '$.delong_p_holm')::DOUBLE AS delong_p_holm
FROM metrics m
JOIN runs rb ON rb.run_id = m.run_id
LEFT JOIN runs ra ON ra.run_id = json_extract_string(m.params, '$.baseline')
WHERE m.metric LIKE 'compare.%'
ORDER BY m.protocol, m.split, run_a, run_b, m.metric, m.label NULLS FIRST;
