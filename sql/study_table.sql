-- The study table's figures per run and protocol, from the metrics table (after `embedstore analyze`).
-- macro_f1_all_labels averages every label (none positive: F1 0); lp's train time is the head fitted on cached vectors.
SELECT m.protocol, r.mode, r.run_id,
       max(value) FILTER (WHERE metric = 'inter_class_distance') AS inter_class_distance,
       max(value) FILTER (WHERE metric = 'intra_class_distance') AS intra_class_distance,
       max(value) FILTER (WHERE metric = 'separation_ratio') AS ratio,
       max(value) FILTER (WHERE metric = 'macro_f1') AS macro_f1_all_labels,
       max(value) FILTER (WHERE metric = 'exact_match') AS exact_match,
       max(value) FILTER (WHERE metric = 'lrap') AS lrap,
       max(value) FILTER (WHERE metric = 'coverage_error') AS coverage_error,
       round(any_value(r.train_seconds) / 60, 2) AS train_minutes,
       CASE WHEN r.mode = 'lp' THEN 'head on cached vectors' END AS train_time_note
FROM metrics m JOIN runs r USING (run_id)
WHERE m.label IS NULL AND m.split = 'test'
GROUP BY m.protocol, r.mode, r.run_id
ORDER BY m.protocol, r.mode;
