-- Filename, split and positive labels of a list of samples.
-- internal
-- param ids VARCHAR: (a list of sample ids, bound as BIGINT[])
SELECT s.sample_id, s.filename, s.split,
       coalesce(list(l.label ORDER BY n.position) FILTER (WHERE l.positive), []) AS labels
FROM samples s
LEFT JOIN labels l USING (sample_id)
LEFT JOIN label_names n ON n.label = l.label
WHERE s.sample_id IN (SELECT unnest($ids::BIGINT[]))
GROUP BY s.sample_id, s.filename, s.split;
