"""nuScenes dataset (``NuScenesDataset``), info generation and the nuScenes detection metric."""
