-- Per split of one dataset: images, uids (studies) and patients (NULL where the dataset names none).
-- param dataset VARCHAR: the dataset's name
SELECT s.split,
       count(*) AS images,
       count(DISTINCT s.uid) AS uids,
       CASE WHEN count(s.patient) > 0 THEN count(DISTINCT s.patient) END AS patients
FROM samples s JOIN datasets d USING (dataset_id)
WHERE d.name = $dataset
GROUP BY s.split
ORDER BY CASE s.split WHEN 'train' THEN 0 WHEN 'val' THEN 1 WHEN 'test' THEN 2 ELSE 3 END;
