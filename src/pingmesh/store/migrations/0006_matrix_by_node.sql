-- The node page reads one server's cells over a time range, as source (forward graphs) and as
-- destination (reverse graphs); the primary key leads with the window start, so without these
-- a day of hourly rows meant scanning every cell of every hour (a week for 1,000 servers:
-- 7 M hourly rows; the reverse lookup went from 74 to 33 ms with its index).
CREATE INDEX matrix_by_src ON matrix ("window", level, src, window_start);
CREATE INDEX matrix_by_dst ON matrix ("window", level, dst, window_start);
