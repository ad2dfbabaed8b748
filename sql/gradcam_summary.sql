-- Pointing-game hit rate per run mode and label, from the gradcam table.
-- internal
SELECT r.mode, g.label, avg(g.pointing_hit::DOUBLE) AS hit_rate, count(*) AS maps
FROM gradcam g JOIN runs r USING (run_id)
GROUP BY r.mode, g.label
ORDER BY g.label, r.mode;
