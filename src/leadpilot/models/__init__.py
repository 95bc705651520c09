"""Lead scoring models: a calibrated XGBoost pipeline that trains on any tabular data, with baselines."""
