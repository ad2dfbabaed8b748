-- Stored figures of the test split for the given metrics, with each run's mode (what charts draw).
-- internal
-- param metrics VARCHAR: (a list of metric names, bound as VARCHAR[])
SELECT m.run_id, r.mode, r.prompt_set, m.protocol, m.metric, m.label, m.value, m.ci_low, m.ci_high, m.params
FROM metrics m JOIN runs r USING (run_id)
WHERE m.split = 'test' AND list_contains($metrics::VARCHAR[], m.metric)
ORDER BY m.protocol, r.mode, m.run_id, m.metric;
