-- How many positive labels each image of one dataset has, per split (the normal label counts as a label).
-- param dataset VARCHAR: the dataset's name
WITH per_image AS (
    SELECT s.sample_id, s.split, count(*) FILTER (WHERE l.positive) AS n_labels
    FROM samples s JOIN labels l USING (sample_id)
    WHERE s.dataset_id = (SELECT dataset_id FROM datasets WHERE name = $dataset)
    GROUP BY s.sample_id, s.split
)
SELECT split, count(*) AS images, round(avg(n_labels), 3) AS mean_labels,
       count(*) FILTER (WHERE n_labels = 1) AS one_label,
       count(*) FILTER (WHERE n_labels = 2) AS two_labels,
       count(*) FILTER (WHERE n_labels >= 3) AS three_or_more
FROM per_image
GROUP BY split
ORDER BY CASE split WHEN 'train' THEN 0 WHEN 'val' THEN 1 WHEN 'test' THEN 2 ELSE 3 END;
