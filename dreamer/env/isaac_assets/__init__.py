"""Offline stand-in for the part of Isaac Sim's asset root that Isaac-Ant needs (see README.md).

The builder lives in :mod:`dreamer.env.isaac_assets.build_asset_root` (not re-exported here so that
``python -m dreamer.env.isaac_assets.build_asset_root`` runs without a double import).
"""
