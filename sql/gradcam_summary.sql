-- Grad-CAM pointing game per setting and label: trained model, random weights, and the chance
-- level (the share of the image within the hit distance of the annotation), with 95 % bootstrap intervals, from `gradcam validate`.
-- internal
-- param dataset VARCHAR: the dataset's name
SELECT m.run_id, r.mode || ' (' || r.protocol || '), ' || json_extract_string(m.params, '$.method') AS setting,
       coalesce(m.label, 'all') AS label,
       CASE m.metric WHEN 'gradcam.pointing_game' THEN 'trained model'
                     WHEN 'gradcam.random_weights.pointing_game' THEN 'random weights'
                     ELSE 'chance' END AS figure,
       m.value, m.ci_low, m.ci_high, json_extract(m.params, '$.n_maps')::INTEGER AS maps
FROM metrics m
JOIN runs r USING (run_id)
JOIN datasets d ON d.dataset_id = r.dataset_id
WHERE d.name = $dataset
  AND m.metric IN ('gradcam.pointing_game', 'gradcam.random_weights.pointing_game', 'gradcam.pointing_chance')
ORDER BY setting, m.label IS NOT NULL, m.label IS DISTINCT FROM 'localised findings', m.label, figure;
