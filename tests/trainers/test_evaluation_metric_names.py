"""The trainer's evaluation metrics are named as `Trainer` names them: under `metric_key_prefix`, and one set per
dataset of a dict `eval_dataset`."""

from datasets import Dataset

from trl_pro.trainers.pro_trainer import PROTrainer


def _rows(n, flip=False):
    rows = []
    for i in range(n):
        completions = [f" a good answer {i}", f" bad {i}", f" worse {i} !"]
        rows.append(
            {
                "prompt": f"Question {i}:",
                "completions": completions[::-1] if flip else completions,
                "scores": [3.0, 2.0, 1.0],
            }
        )
    return rows


def test_ranking_metrics_take_the_metric_key_prefix(tokenizer, tiny_model, make_config):
    trainer = PROTrainer(
        tiny_model, args=make_config(), train_dataset=Dataset.from_list(_rows(4)), processing_class=tokenizer
    )
    metrics = trainer.evaluate(Dataset.from_list(_rows(4)), metric_key_prefix="test")
    assert "test_loss" in metrics and "test_ranking/pairwise_accuracy" in metrics
    assert not any(key.startswith("eval_") for key in metrics)


def test_each_eval_dataset_of_a_dict_keeps_its_own_ranking_metrics(tokenizer, tiny_model, make_config):
    trainer = PROTrainer(
        tiny_model, args=make_config(), train_dataset=Dataset.from_list(_rows(4)), processing_class=tokenizer
    )
    # The same candidates in reverse order: every pairwise judgment flips, so the two accuracies sum to 1
    metrics = trainer.evaluate({"ordered": Dataset.from_list(_rows(4)), "reversed": Dataset.from_list(_rows(4, True))})
    ordered = metrics["eval_ordered_ranking/pairwise_accuracy"]
    reversed_ = metrics["eval_reversed_ranking/pairwise_accuracy"]
    assert ordered + reversed_ == 1.0
    assert "eval_ranking/pairwise_accuracy" not in metrics
    # each set is that dataset's own, as if evaluated alone
    alone = trainer.evaluate(Dataset.from_list(_rows(4, True)), metric_key_prefix="eval_reversed")
    assert alone["eval_reversed_ranking/kendall_tau"] == metrics["eval_reversed_ranking/kendall_tau"]
    assert alone["eval_reversed_ranking/kendall_tau"] == -metrics["eval_ordered_ranking/kendall_tau"]
