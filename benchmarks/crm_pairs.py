"""Real pairs (issue #6): win probability per (opportunity, salesperson) on Maven's CRM Sales Opportunities.

The only real record here of which salesperson worked which lead and won or lost it. The run:

  1. Closed opportunities (Won = 1, Lost = 0; Engaging/Prospecting have no label) are split by ``engage_date``:
     training before ``--cutoff`` (default 2017-08-16, which leaves about 30 % of closed deals after it), test
     on or after it. ``--strict`` also drops training deals that closed after the cut-off (a model trained
     *at* the cut-off could not know them).
  2. Features of a pair, all point in time (outcomes of *training* deals that closed strictly before the
     opportunity's engage date; smoothed rates shrink towards the wider scope): product (series, price),
     account (sector, revenue, employees, year, headquarters, subsidiary), salesperson (id, manager, regional
     office), the salesperson's win rate overall / on this product / in this sector / with this account, the
     account's and the product's win rate, pair terms (product and sector rate relative to the salesperson's
     overall rate, the salesperson's share of deals on this product).
  3. XGBoost on the training pairs (rounds chosen by early stopping on the newest 15 % of training, then refit
     on all of it); on the test period, ROC-AUC with a bootstrap 95 % interval of the model, the salesperson's
     smoothed win rate (baseline), the product-only rate (baseline), and the model without salesperson columns.
  4. Routing, offline: for each test opportunity the model scores every salesperson who handled that product
     in training within the logged salesperson's regional office (and, as a variant, anywhere); its preferred
     salesperson is the best-scoring one. The logged policy's propensity P(salesperson | product, regional office)
     is the training share; IPS = mean(1[logged = preferred] · won / propensity), SNIPS self-normalises.
     Assignment shares drift over time, so the same estimates are repeated with propensities from the test
     period's own assignments (who got which deal is known without any outcome). The salesperson-win-rate
     baseline's routing (best smoothed salesperson × product rate) is estimated the same way for comparison.
  5. Chi-square tests of independence between the outcome and each attribute (salesperson, product, sector,
     account, salesperson × product), on all closed deals, to say whether there is any pair signal to find.

One JSON document on stdout, progress on stderr. Run it as
``flock /tmp/leadpilot-bench.lock nice -n 5 .venv/bin/python benchmarks/crm_pairs.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, log, machine_info

from leadpilot.distribution.pairs import ConditionalPropensity, PointInTimeRates, bootstrap_auc, ips_estimate

DEFAULT_DATA = REPO.parent / "shared" / "data" / "crm_sales_opportunities"
CATEGORICAL = ["product", "series", "sector", "office_location", "sales_agent", "manager", "regional_office"]
AGENT_COLUMNS = ["sales_agent", "manager", "regional_office"]
RATE_COLUMNS = [
    "agent_n",
    "agent_rate",
    "agent_product_n",
    "agent_product_rate",
    "agent_sector_n",
    "agent_sector_rate",
    "agent_account_n",
    "agent_account_rate",
    "agent_product_share",
    "agent_product_lift",
    "agent_sector_lift",
]
OPPORTUNITY_COLUMNS = [
    "product",
    "series",
    "sales_price",
    "sector",
    "revenue",
    "employees",
    "year_established",
    "office_location",
    "is_subsidiary",
    "account_n",
    "account_rate",
    "product_n",
    "product_rate",
]


def load(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(closed opportunities joined to account, product and team; the sales teams) from the Maven CSVs."""
    names = ["sales_pipeline.csv", "accounts.csv", "products.csv", "sales_teams.csv"]
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        raise SystemExit(
            f"CRM Sales Opportunities not found in {folder} (missing {', '.join(missing)}): this benchmark needs "
            "../shared/data/crm_sales_opportunities beside the repository, or give --data DIR"
        )
    pipeline = pd.read_csv(folder / "sales_pipeline.csv")
    accounts = pd.read_csv(folder / "accounts.csv")
    products = pd.read_csv(folder / "products.csv")
    teams = pd.read_csv(folder / "sales_teams.csv")
    # The pipeline spells one product "GTXPro"; the product table says "GTX Pro".
    pipeline["product"] = pipeline["product"].replace({"GTXPro": "GTX Pro"})
    closed = pipeline[pipeline["deal_stage"].isin(["Won", "Lost"])].copy()
    closed["won"] = (closed["deal_stage"] == "Won").astype(int)
    closed["engage_date"] = pd.to_datetime(closed["engage_date"], errors="raise")
    closed["close_date"] = pd.to_datetime(closed["close_date"], errors="raise")
    bad = closed[closed["close_date"] < closed["engage_date"]]
    if len(bad):
        raise SystemExit(f"opportunity {bad.iloc[0]['opportunity_id']} closed before it was engaged")
    accounts["is_subsidiary"] = accounts["subsidiary_of"].notna().astype(int)
    closed = closed.merge(accounts.drop(columns="subsidiary_of"), on="account", how="left", validate="many_to_one")
    closed = closed.merge(products, on="product", how="left", validate="many_to_one")
    unknown = closed[closed["sector"].isna() | closed["series"].isna()]
    if len(unknown):
        row = unknown.iloc[0]
        raise SystemExit(f"opportunity {row['opportunity_id']}: account {row['account']!r} or product unknown")
    closed = closed.merge(teams, on="sales_agent", how="left", validate="many_to_one")
    return closed.sort_values(["engage_date", "opportunity_id"]).reset_index(drop=True), teams


class PairFeatures:
    """Point-in-time features of (opportunity, salesperson) pairs from a history of closed training deals."""

    def __init__(self, history: pd.DataFrame, strength: float = 20.0) -> None:
        self.strength = strength
        t, y = history["close_date"].to_numpy(), history["won"].to_numpy()
        self.rates = {
            name: PointInTimeRates(strength).fit([history[c].to_numpy() for c in cols], t, y)
            for name, cols in {
                "all": ["one"],
                "agent": ["sales_agent"],
                "agent_product": ["sales_agent", "product"],
                "agent_sector": ["sales_agent", "sector"],
                "agent_account": ["sales_agent", "account"],
                "account": ["account"],
                "product": ["product"],
            }.items()
        }

    def frame(self, opportunities: pd.DataFrame, agents: pd.Series, teams: pd.DataFrame) -> pd.DataFrame:
        """One row per (opportunity row, salesperson) with the opportunity's and the pair's columns."""
        out = opportunities[[c for c in OPPORTUNITY_COLUMNS if c in opportunities.columns]].copy()
        out["sales_agent"] = agents.to_numpy()
        team = teams.set_index("sales_agent")
        out["manager"] = out["sales_agent"].map(team["manager"])
        out["regional_office"] = out["sales_agent"].map(team["regional_office"])
        t = opportunities["engage_date"].to_numpy()
        agent = out["sales_agent"].to_numpy()
        one = np.ones(len(out))

        def rate(name: str, keys: list[Any], prior: Any) -> tuple[np.ndarray, np.ndarray]:
            return self.rates[name].transform(keys, t, prior)

        n_all, wins_all = self.rates["all"].counts([one], t)
        prior = np.where(n_all > 0, (wins_all + 1.0) / (n_all + 2.0), 0.5)
        out["account_n"], out["account_rate"] = rate("account", [opportunities["account"].to_numpy()], prior)
        out["product_n"], out["product_rate"] = rate("product", [opportunities["product"].to_numpy()], prior)
        out["agent_n"], out["agent_rate"] = rate("agent", [agent], prior)
        keys_product = [agent, opportunities["product"].to_numpy()]
        out["agent_product_n"], out["agent_product_rate"] = rate("agent_product", keys_product, out["agent_rate"])
        keys_sector = [agent, opportunities["sector"].to_numpy()]
        out["agent_sector_n"], out["agent_sector_rate"] = rate("agent_sector", keys_sector, out["agent_rate"])
        keys_account = [agent, opportunities["account"].to_numpy()]
        out["agent_account_n"], out["agent_account_rate"] = rate("agent_account", keys_account, out["agent_rate"])
        out["agent_product_share"] = out["agent_product_n"] / np.maximum(out["agent_n"], 1)
        out["agent_product_lift"] = out["agent_product_rate"] - out["agent_rate"]
        out["agent_sector_lift"] = out["agent_sector_rate"] - out["agent_rate"]
        return out


def with_categories(frame: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
    """The frame with the categorical columns typed on fixed category lists (shared by train and test)."""
    frame = frame.copy()
    for column in CATEGORICAL:
        if column in frame.columns:
            frame[column] = pd.Categorical(frame[column], categories=categories[column])
    return frame


def fit_booster(train: pd.DataFrame, y: np.ndarray, columns: list[str], seed: int) -> Any:
    """XGBoost on ``columns``: rounds from early stopping on the newest 15 % of training, then a refit on all."""
    import xgboost as xgb

    params: dict[str, Any] = {
        "max_depth": 3,
        "learning_rate": 0.03,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 5,
        "reg_lambda": 5.0,
        "tree_method": "hist",
        "enable_categorical": True,
        "max_cat_to_onehot": 8,
        "n_jobs": 2,
        "random_state": seed,
        "eval_metric": "auc",
    }
    cut = int(len(train) * 0.85)
    probe = xgb.XGBClassifier(n_estimators=1000, early_stopping_rounds=50, **params)
    probe.fit(train[columns].iloc[:cut], y[:cut], eval_set=[(train[columns].iloc[cut:], y[cut:])], verbose=False)
    rounds = max(20, int(probe.best_iteration) + 1)
    model = xgb.XGBClassifier(n_estimators=rounds, **params)
    model.fit(train[columns], y)
    model.rounds_ = rounds
    model.validation_auc_ = float(probe.best_score)
    return model


def routing(
    *,
    test: pd.DataFrame,
    train: pd.DataFrame,
    teams: pd.DataFrame,
    features: PairFeatures,
    categories: dict[str, list[str]],
    model: Any,
    columns: list[str],
    context: list[str],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """IPS / SNIPS of the model's and the win-rate baseline's routing, against the logged assignment."""
    propensity = ConditionalPropensity().fit(
        [tuple(row) for row in train[context].to_numpy()], train["sales_agent"].tolist()
    )
    contexts = [tuple(row) for row in test[context].to_numpy()]
    rows, agents = [], []
    for position, ctx in enumerate(contexts):
        for agent in propensity.actions(ctx):
            rows.append(position)
            agents.append(agent)
    if not rows:
        raise SystemExit("no test opportunity has a salesperson who handled its product in training")
    index = np.asarray(rows)
    pairs = features.frame(test.iloc[index].reset_index(drop=True), pd.Series(agents), teams)
    score = model.predict_proba(with_categories(pairs, categories)[columns])[:, 1]
    table = pd.DataFrame({"row": index, "agent": agents, "model": score, "rate": pairs["agent_product_rate"]})
    logged_agent = test["sales_agent"].to_numpy()
    won = test["won"].to_numpy()
    p_logged = propensity.predict(contexts, list(logged_agent))
    # The test period's own assignment shares: known without any outcome, so a fair second estimate.
    p_test = ConditionalPropensity().fit(contexts, list(logged_agent)).predict(contexts, list(logged_agent))
    out: dict[str, Any] = {
        "context": context,
        "candidates_per_opportunity": round(len(table) / len(test), 2),
        "logged_outside_training_support": int((p_logged == 0).sum()),
    }
    for policy in ("model", "rate"):
        best = table.loc[table.groupby("row")[policy].idxmax()].set_index("row")["agent"]
        preferred = best.reindex(range(len(test))).to_numpy()
        matched = preferred == logged_agent
        result = ips_estimate(matched=matched, reward=won, propensity=p_logged, n_boot=n_boot, seed=seed)
        if policy == "model":
            # The model's own view (direct method): its mean predicted win rate for the preferred vs the logged one.
            chosen = table.loc[table.groupby("row")["model"].idxmax(), "model"].to_numpy()
            at_logged = table[table["agent"].to_numpy() == logged_agent[table["row"].to_numpy()]]
            result["model_predicted_preferred"] = round(float(chosen.mean()), 4)
            result["model_predicted_logged_on_support"] = round(float(at_logged["model"].mean()), 4)
            result["distinct_preferred_agents"] = int(pd.Series(preferred).nunique())
            result["top_preferred_share"] = round(float(pd.Series(preferred).value_counts(normalize=True).iloc[0]), 4)
        out[f"{policy}_policy"] = result
        test_share = ips_estimate(matched=matched, reward=won, propensity=p_test, n_boot=n_boot, seed=seed)
        out[f"{policy}_policy_test_period_propensity"] = test_share
    return out


def signal_tests(closed: pd.DataFrame) -> dict[str, Any]:
    """Chi-square tests of independence between the outcome and each attribute (all closed deals, descriptive)."""
    from scipy.stats import chi2_contingency

    closed = closed.assign(agent_product=closed["sales_agent"] + " | " + closed["product"])
    out: dict[str, Any] = {}
    for column in ["sales_agent", "product", "sector", "account", "regional_office", "manager", "agent_product"]:
        table = pd.crosstab(closed[column], closed["won"])
        table = table[table.sum(axis=1) >= 20]  # cells big enough for the chi-square approximation
        rates = table[1] / table.sum(axis=1)
        out[column] = {
            "levels": len(table),
            "p_value": round(float(chi2_contingency(table.to_numpy())[1]), 4),
            "win_rate_min": round(float(rates.min()), 3),
            "win_rate_max": round(float(rates.max()), 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Folder with the Maven CSVs.")
    parser.add_argument("--cutoff", default="2017-08-16", help="Engage date that starts the test period.")
    parser.add_argument("--strict", action="store_true", help="Train only on deals closed before the cut-off.")
    parser.add_argument("--strength", type=float, default=20.0, help="Pseudo-deals of prior in smoothed rates.")
    parser.add_argument("--boot", type=int, default=1000, help="Bootstrap resamples.")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    started, cpu_started = time.perf_counter(), time.process_time()

    closed, teams = load(args.data)
    closed["one"] = 1
    cutoff = pd.Timestamp(args.cutoff)
    train = closed[closed["engage_date"] < cutoff]
    if args.strict:
        train = train[train["close_date"] < cutoff]
    train = train.reset_index(drop=True)
    test = closed[closed["engage_date"] >= cutoff].reset_index(drop=True)
    if len(train) < 100 or test["won"].nunique() < 2:
        raise SystemExit(f"cut-off {args.cutoff} leaves {len(train)} training and {len(test)} test deals: pick another")
    log(f"{len(closed)} closed deals: {len(train)} train (engaged before {args.cutoff}), {len(test)} test")

    features = PairFeatures(train, args.strength)
    categories = {c: sorted(closed[c].dropna().unique().tolist()) for c in CATEGORICAL}
    categories["sales_agent"] = sorted(teams["sales_agent"].tolist())
    categories["manager"] = sorted(teams["manager"].unique().tolist())
    categories["regional_office"] = sorted(teams["regional_office"].unique().tolist())
    train_x = with_categories(features.frame(train, train["sales_agent"], teams), categories)
    test_x = with_categories(features.frame(test, test["sales_agent"], teams), categories)
    y_train, y_test = train["won"].to_numpy(), test["won"].to_numpy()

    columns = OPPORTUNITY_COLUMNS + AGENT_COLUMNS + RATE_COLUMNS
    model = fit_booster(train_x, y_train, columns, args.seed)
    opportunity_only = fit_booster(train_x, y_train, OPPORTUNITY_COLUMNS, args.seed)
    log(f"models fitted ({model.rounds_} and {opportunity_only.rounds_} rounds)")
    scores = {
        "model": model.predict_proba(test_x[columns])[:, 1],
        "agent_win_rate": test_x["agent_rate"].to_numpy(),
        "agent_product_win_rate": test_x["agent_product_rate"].to_numpy(),
        "product_rate": test_x["product_rate"].to_numpy(),
        "model_without_salesperson": opportunity_only.predict_proba(test_x[OPPORTUNITY_COLUMNS])[:, 1],
    }
    aucs = {name: bootstrap_auc(y_test, s, n_boot=args.boot, seed=args.seed).as_dict() for name, s in scores.items()}
    rng = np.random.default_rng(args.seed)
    draws = rng.integers(0, len(y_test), (args.boot, len(y_test)))
    from sklearn.metrics import roc_auc_score

    diff = [
        roc_auc_score(y_test[i], scores["model"][i]) - roc_auc_score(y_test[i], scores["agent_win_rate"][i])
        for i in draws
    ]
    gain = {
        "value": round(aucs["model"]["value"] - aucs["agent_win_rate"]["value"], 4),
        "ci_low": round(float(np.quantile(diff, 0.025)), 4),
        "ci_high": round(float(np.quantile(diff, 0.975)), 4),
    }
    log("AUCs: " + ", ".join(f"{k} {v['value']:.3f}" for k, v in aucs.items()))

    routes = {
        name: routing(
            test=test,
            train=train,
            teams=teams,
            features=features,
            categories=categories,
            model=model,
            columns=columns,
            context=context,
            n_boot=args.boot,
            seed=args.seed,
        )
        for name, context in {
            "within_regional_office": ["product", "regional_office"],
            "any_office": ["product"],
        }.items()
    }
    importance = sorted(zip(columns, model.feature_importances_.tolist(), strict=True), key=lambda item: -item[1])[:10]
    result: dict[str, Any] = {
        "benchmark": "crm_pairs",
        "machine": machine_info(),
        "data": str(args.data),
        "split": {
            "cutoff_engage_date": args.cutoff,
            "strict": args.strict,
            "closed_deals": len(closed),
            "train": len(train),
            "test": len(test),
            "test_share": round(len(test) / (len(train) + len(test)), 4),
            "train_win_rate": round(float(y_train.mean()), 4),
            "test_win_rate": round(float(y_test.mean()), 4),
            "train_closed_after_cutoff": int((train["close_date"] >= cutoff).sum()),
        },
        "model": {
            "rounds": model.rounds_,
            "validation_auc": round(model.validation_auc_, 4),
            "without_salesperson_rounds": opportunity_only.rounds_,
            "without_salesperson_validation_auc": round(opportunity_only.validation_auc_, 4),
            "columns": len(columns),
            "top_importance": [[name, round(value, 4)] for name, value in importance],
        },
        "independence_tests": signal_tests(closed),
        "test_auc": aucs,
        "model_minus_agent_win_rate_auc": gain,
        "routing": routes,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
    }
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    json.dump(result, sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
