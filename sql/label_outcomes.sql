-- Thresholded outcome of every (sample, label) of `_scored(sample_id, label, score, truth)` against
-- `_thresholds(label, threshold)`: predicted where score >= threshold; true/false positive/negative.
-- internal
SELECT s.sample_id, s.label,
       (s.score >= t.threshold)::INTEGER AS predicted,
       (s.score >= t.threshold AND s.truth = 1)::INTEGER AS tp,
       (s.score >= t.threshold AND s.truth = 0)::INTEGER AS fp,
       (s.score < t.threshold AND s.truth = 1)::INTEGER AS fn
FROM _scored s JOIN _thresholds t USING (label)
ORDER BY s.sample_id, s.label;
