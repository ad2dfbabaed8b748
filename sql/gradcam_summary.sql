-- Grad-CAM localisation per setting and label, as `gradcam validate` stored it: the pointing game,
-- CheXlocalize's hit rate and mIoU of the trained model, the random-weights model, the chance level
-- (pointing game: a random point within the tolerance; hit rate: a random point, the annotation's
-- area share), the human readers' agreement and the model on the same held-out references (where
-- several readers annotated an image), and the trained model by lesion-size tercile, with 95 %
-- bootstrap intervals.
-- internal
-- param dataset VARCHAR: the dataset's name
WITH figures(metric, panel, figure, rank) AS (VALUES
    ('gradcam.pointing_game', 'pointing game', 'trained model', 1),
    ('gradcam.random_weights.pointing_game', 'pointing game', 'random weights', 2),
    ('gradcam.pointing_chance', 'pointing game', 'chance', 3),
    ('localisation.hit_rate', 'hit rate', 'trained model', 1),
    ('localisation.random_weights.hit_rate', 'hit rate', 'random weights', 2),
    ('gradcam.area_share', 'hit rate', 'chance', 3),
    ('localisation.human_hit_rate', 'hit rate', 'human readers', 4),
    ('localisation.held_out_hit_rate', 'hit rate', 'model, held-out references', 4),
    ('localisation.hit_rate.small', 'hit rate', 'small lesions', 5),
    ('localisation.hit_rate.medium', 'hit rate', 'medium lesions', 6),
    ('localisation.hit_rate.large', 'hit rate', 'large lesions', 7),
    ('localisation.miou', 'mIoU', 'trained model', 1),
    ('localisation.random_weights.miou', 'mIoU', 'random weights', 2),
    ('localisation.human_miou', 'mIoU', 'human readers', 4),
    ('localisation.held_out_miou', 'mIoU', 'model, held-out references', 4),
    ('localisation.miou.small', 'mIoU', 'small lesions', 5),
    ('localisation.miou.medium', 'mIoU', 'medium lesions', 6),
    ('localisation.miou.large', 'mIoU', 'large lesions', 7))
SELECT m.run_id, r.mode || ' (' || r.protocol || '), ' || json_extract_string(m.params, '$.method') AS setting,
       coalesce(m.label, 'all') AS label, f.panel, f.figure,
       m.value, m.ci_low, m.ci_high, json_extract(m.params, '$.n_maps')::INTEGER AS maps
FROM metrics m
JOIN figures f USING (metric)
JOIN runs r USING (run_id)
JOIN datasets d ON d.dataset_id = r.dataset_id
WHERE d.name = $dataset
ORDER BY setting, m.label IS NOT NULL, m.label IS DISTINCT FROM 'localised findings', m.label, f.panel, f.rank;
