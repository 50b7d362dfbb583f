"""Select and order the per-point features the network sees (``POINT_FEATURE_ENCODING``)."""
import numpy as np

from ... import batch_keys as K


class PointFeatureEncoder:
    """``ENCODING_TYPE: absolute_coordinates_encoding`` with ``used_feature_list`` / ``src_feature_list``.

    ``src_feature_list`` names the columns of the stored points (e.g. ``['x', 'y', 'z', 'intensity']``);
    ``used_feature_list`` the columns kept, in order; x, y, z must come first in both.
    """

    ENCODINGS = ("absolute_coordinates_encoding",)

    def __init__(self, config, point_cloud_range=None):
        self.point_encoding_config = config
        encoding = config.get("encoding_type", config.get("ENCODING_TYPE", "absolute_coordinates_encoding"))
        if encoding not in self.ENCODINGS:
            raise ValueError(f"POINT_FEATURE_ENCODING.encoding_type '{encoding}' unknown (known: {self.ENCODINGS})")
        self.encoding_type = encoding
        self.src_feature_list = list(config.src_feature_list)
        self.used_feature_list = list(config.used_feature_list)
        for name, lst in (("src_feature_list", self.src_feature_list), ("used_feature_list", self.used_feature_list)):
            if lst[0:3] != ["x", "y", "z"]:
                raise ValueError(f"POINT_FEATURE_ENCODING.{name} must start with x, y, z; got {lst}")
        unknown = [f for f in self.used_feature_list if f not in self.src_feature_list]
        if unknown:
            raise ValueError(f"POINT_FEATURE_ENCODING.used_feature_list names {unknown}, "
                             f"absent from src_feature_list {self.src_feature_list}")
        self.point_cloud_range = point_cloud_range
        self._columns = np.array([self.src_feature_list.index(f) for f in self.used_feature_list], dtype=np.int64)

    @property
    def num_point_features(self):
        return len(self.used_feature_list)

    def forward(self, data_dict):
        """``points`` (N, len(src_feature_list)) -> (N, len(used_feature_list)); sets ``use_lead_xyz`` True."""
        points = data_dict[K.POINTS]
        if points.ndim != 2 or points.shape[1] != len(self.src_feature_list):
            raise ValueError(
                f"PointFeatureEncoder: frame {data_dict.get(K.FRAME_ID)}: points have shape {points.shape}, "
                f"expected (N, {len(self.src_feature_list)}) for src_feature_list {self.src_feature_list}")
        data_dict[K.POINTS] = points[:, self._columns]
        data_dict[K.USE_LEAD_XYZ] = True
        return data_dict
