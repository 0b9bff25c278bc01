"""On-policy distillation: the student samples, the teacher scores every sampled token, the loss is
the per-token reverse KL — on tiny models, the student's reverse KL to the teacher falls."""

import contextlib
import json

import pytest
import torch

from r1lite import prompts, tasks
from r1lite.config import build
from r1lite.errors import UsageError
from r1lite.models import resolve_runtime
from r1lite.train import sft
from r1lite.train.config import GRPOConfig
from r1lite.train.policy import Policy


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory):
    """A tiny model trained on R1-format answers for 10 epochs (the student) and 10 more (the
    teacher): one lineage, as a base and its trained successor are, the teacher far more peaked."""
    folder = tmp_path_factory.mktemp("onpolicy")
    task = tasks.load_task("arithmetic", {"digits": 1})
    model, tokenizer = tiny_model(seed=1)
    pairs = []
    for item in task.split("train", 24, seed=0):
        messages, prefill = prompts.build_messages(item, task, "r1")
        pairs.append(sft.encode_pair(tokenizer, messages, prefill, f"<think>{item.question[8:-1]}</think>\n<answer>{item.answer}</answer>"))
    for name in ("student", "teacher"):
        sft.train_sft(Policy(model), tokenizer, pairs, epochs=10, lr=3e-3, batch_size=8, micro_batch_size=8, seed=0,
                      autocast=contextlib.nullcontext, device=torch.device("cpu"))
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    return folder / "student", folder / "teacher"


def test_on_policy_distillation_lowers_the_reverse_kl_to_the_teacher(cli, models, tmp_path):
    student, teacher = models
    run = tmp_path / "run"
    r = cli("train", "--model", student, "--objective", "on_policy_distill", "--teacher", teacher, "--task", "arithmetic",
            "--task-options", "digits=1", "--max-steps", "10", "--batch-size", "64", "--group-size", "4",
            "--micro-batch-size", "64", "--max-new-tokens", "12", "--lr", "1e-3", "--eval-items", "0", "--save-every", "0",
            "--device", "cpu", "--dtype", "fp32", "--out", run, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    kl = [json.loads(line)["reverse_kl"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(kl) == 10 and kl[0] > 1.0, kl  # on the student's own samples, exact over the vocabulary
    assert min(kl[2:]) < 0.6 * kl[0] and sum(kl[-3:]) / 3 < 0.8 * kl[0], kl
    cost = json.loads((run / "summary.json").read_text())["cost"]
    assert cost["teacher"]["flops_by_phase"]["teacher_scoring"] > 0 and cost["teacher"]["on_policy_teacher"] == str(teacher)
    assert cost["teacher"]["student_flops"] == pytest.approx(cost["flops"]["total"] - cost["teacher"]["flops"])


def test_the_distillation_gradient_is_the_gradient_of_the_reverse_kl():
    """distill_loss back-propagates chunk by chunk into the hidden states and the head: the same
    gradients as autograd through the whole reverse KL at once."""
    from r1lite.train import onpolicy

    torch.manual_seed(0)
    hidden, head = torch.randn(300, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    teacher_hidden, teacher_head, weights = torch.randn(300, 8), torch.randn(50, 8), torch.rand(300)
    whole = (weights * onpolicy.reverse_kl(hidden @ head.t() / 0.7, teacher_hidden @ teacher_head.t())[0]).sum()
    expected = torch.autograd.grad(whole, [hidden, head])
    loss, _, _ = onpolicy.distill_loss(hidden, head, teacher_hidden, teacher_head, weights, 0.7)
    assert loss == pytest.approx(float(whole.detach()), rel=1e-5)
    torch.testing.assert_close(hidden.grad, expected[0])
    torch.testing.assert_close(head.grad, expected[1])


@pytest.mark.parametrize("keys, needle", [
    ({"objective": "on_policy_distill"}, "needs teacher"),
    ({"teacher": "x"}, "needs teacher"),
    ({"objective": "on_policy_distill", "teacher": "x", "beta": 0.04}, "set beta 0"),
    ({"objective": "nope"}, "objective 'nope' is unknown"),
])
def test_on_policy_settings_that_cannot_work_are_refused(keys, needle):
    with pytest.raises(UsageError, match=needle):
        build(GRPOConfig, keys)


def test_a_teacher_with_another_tokenizer_is_refused(tiny_model, tmp_path):
    from r1lite.train.onpolicy import Teacher

    _, tokenizer = tiny_model()
    tokenizer.add_tokens(["<extra-token>"])
    with pytest.raises(UsageError, match="not the student's"):
        Teacher("tiny", resolve_runtime("cpu", "fp32"), tokenizer)
