-- Per label of one dataset: positives (labels.positive) per split, prevalence and imbalance ratio (negatives per
-- positive) among the samples whose label is known, and the pairs left out (`--uncertain ignore`).
-- param dataset VARCHAR: the dataset's name
WITH d AS (SELECT dataset_id FROM datasets WHERE name = $dataset),
per AS (
    SELECT l.label,
           count(*) FILTER (WHERE l.positive AND s.split = 'train') AS train,
           count(*) FILTER (WHERE l.positive AND s.split = 'val') AS val,
           count(*) FILTER (WHERE l.positive AND s.split = 'test') AS test,
           count(*) FILTER (WHERE l.positive) AS positives,
           count(l.positive) AS samples,
           count(*) FILTER (WHERE l.positive IS NULL) AS left_out
    FROM labels l JOIN samples s USING (sample_id)
    WHERE l.dataset_id = (SELECT dataset_id FROM d)
    GROUP BY l.label
)
SELECT per.label, n.domain, per.train, per.val, per.test, per.positives,
       round(per.positives / per.samples, 4) AS prevalence,
       CASE WHEN per.positives > 0 THEN round((per.samples - per.positives) / per.positives, 2) END AS imbalance_ratio,
       per.left_out
FROM per LEFT JOIN label_names n USING (label)
ORDER BY n.position, per.label;
