-- Positive samples per label and split of one dataset (`positive`: by the dataset's uncertain policy, or the normal
-- label derived), and the samples whose label is known (left-out pairs not counted).
-- param dataset VARCHAR: the dataset's name, as given to `embedstore ingest --name`
SELECT l.label, s.split, count(*) FILTER (WHERE l.positive) AS positives, count(l.positive) AS samples
FROM labels l
JOIN samples s USING (sample_id)
JOIN datasets d ON d.dataset_id = s.dataset_id
LEFT JOIN label_names n ON n.label = l.label
WHERE d.name = $dataset
GROUP BY l.label, s.split, n.position
ORDER BY n.position, l.label, s.split;
