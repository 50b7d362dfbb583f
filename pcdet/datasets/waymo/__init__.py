"""Waymo Open Dataset (``WaymoDataset``), the optional tfrecord converter and Waymo-style AP / APH."""
