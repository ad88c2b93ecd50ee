"""Re-run the red-team list of issue 8: every attack and fault that broke wxkf, against its test.

    .venv/bin/python bench/redteam.py            # all items
    .venv/bin/python bench/redteam.py 7 11 12    # some items

Each item names the tests that drive it (real redis-server restarted empty or with data, the sandbox
slowed past the client timeout, gunicorn behind nginx, forged and hostile requests). They run through
pytest as one session; the table says, per item, how many of its tests passed. Exit status 1 when
any failed. `tests/test_redteam_map.py` keeps this map pointing at tests that exist.
"""
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ITEMS = [
    ("1", "Redis restarted empty: groups recreated, health red while the worker cannot work", [
        "tests/test_worker.py::test_a_redis_restarted_empty_gets_its_groups_back_and_no_message_is_lost",
        "tests/test_worker.py::test_health_turns_red_while_the_worker_cannot_work",
        "tests/test_e2e.py::test_redis_going_away_loses_nothing"]),
    ("2", "A Redis blip: entries taken before the error are answered after it", [
        "tests/test_worker.py::test_messages_taken_before_a_redis_error_are_answered_after_it",
        "tests/test_sender.py::test_redis_lost_right_after_wechat_accepted_a_send_does_not_send_it_twice"]),
    ("3", "A send slower than the client timeout is not sent again", [
        "tests/test_sender.py::test_a_send_slower_than_the_timeout_is_not_sent_again"]),
    ("4", "A 3,600-character message still gets a reply", [
        "tests/test_generator.py::test_a_3600_character_question_still_gets_a_reply"]),
    ("5", "Redelivery does not grant the quota again", [
        "tests/test_sender.py::test_a_redelivered_message_does_not_grant_its_allowance_again",
        "tests/test_sender.py::test_a_new_shopper_message_resets_the_allowance_without_accumulating"]),
    ("6", "A broken or emptied knowledge base at start-up", [
        "tests/test_knowledge.py::test_an_emptied_file_is_an_error_not_a_silent_loss_of_its_intents",
        "tests/test_knowledge.py::test_a_knowledge_base_broken_at_start_up_runs_on_the_last_good_version",
        "tests/test_worker.py::test_a_worker_starts_on_the_last_good_knowledge_when_the_files_are_broken",
        "tests/test_console.py::test_the_console_opens_with_a_broken_knowledge_base_and_says_what_is_wrong"]),
    ("7", "Replay with a forged body; plaintext refused in safe mode", [
        "tests/test_webhook.py::test_a_captured_signature_cannot_carry_another_body",
        "tests/test_webhook.py::test_plaintext_pushes_are_refused_unless_the_operator_opts_in"]),
    ("8", "500s on odd timestamps, huge numbers, deep nesting, UTF-16 DOCTYPE", [
        "tests/test_webhook.py::test_a_non_ascii_digit_timestamp_is_403_not_500",
        "tests/test_webhook.py::test_fields_wechat_never_sends_are_400_not_500",
        "tests/test_webhook.py::test_deep_nesting_and_other_encodings_are_400_not_500",
        "tests/test_webhook.py::test_malformed_or_hostile_bodies_are_400"]),
    ("9", "A newline in MsgType forges no log line, metrics stay parseable", [
        "tests/test_webhook.py::test_a_newline_in_msgtype_forges_no_log_line_and_keeps_metrics_parseable",
        "tests/test_webhook.py::test_metric_label_values_are_escaped"]),
    ("10", "/healthz and /metrics: no keyspace scan, optional token", [
        "tests/test_webhook.py::test_healthz_and_metrics_never_scan_the_keyspace",
        "tests/test_webhook.py::test_ops_endpoints_can_require_a_token"]),
    ("11", "Login: huge names, racing guesses, timing, logout, proxies, unsafe next, bad rollback", [
        "tests/test_console.py::test_a_huge_username_leaves_only_a_small_key",
        "tests/test_console.py::test_parallel_guesses_check_at_most_five_passwords",
        "tests/test_console.py::test_unknown_names_cost_a_password_check_too",
        "tests/test_console.py::test_logout_revokes_the_session_cookie",
        "tests/test_console.py::test_behind_a_trusted_proxy_one_clients_failures_do_not_lock_out_another",
        "tests/test_console.py::test_login_never_redirects_to_an_unsafe_next",
        "tests/test_console.py::test_rollback_of_a_malformed_version_is_a_message_not_a_500"]),
    ("12", "Slow clients behind nginx; agents' replies off the web workers", [
        "tests/test_proxy.py::test_trickling_clients_do_not_stop_pushes_behind_nginx",
        "tests/test_proxy.py::test_an_oversize_push_is_refused_by_nginx_before_gunicorn",
        "tests/test_console.py::test_agent_replies_are_sent_by_the_worker_not_the_web_process",
        "tests/test_console.py::test_an_agent_reply_taken_by_a_worker_that_died_is_sent_by_another_once"]),
    ("13", "var/ is private", [
        "tests/test_store.py::test_the_data_folder_and_files_are_readable_by_the_owner_only"]),
    ("14", "Demo credentials are not defaults", [
        "tests/test_config.py::test_a_production_config_that_forgets_the_token_does_not_start",
        "tests/test_config.py::test_demo_credentials_refuse_to_start_outside_the_sandbox"]),
    ("15", "Two admins, one file; a stale form", [
        "tests/test_kbedit.py::test_two_admins_saving_different_intents_of_one_file_both_keep_their_edit",
        "tests/test_kbedit.py::test_a_stale_form_is_a_conflict_not_a_silent_overwrite"]),
    ("16", "Round-trip knowledge edits: zero-indent files, 「，」, existing ids, U+2028", [
        "tests/test_kbedit.py::test_editing_the_last_intent_of_a_zero_indent_file_keeps_what_follows",
        "tests/test_kbedit.py::test_saving_the_edit_form_keeps_full_width_commas",
        "tests/test_kbedit.py::test_new_with_an_existing_id_is_refused_and_changes_nothing",
        "tests/test_kbedit.py::test_an_odd_shopper_question_becomes_one_clean_example"]),
    ("structure", "One handoff owner, a Flask-free worker that stops between entries", [
        "tests/test_handoff.py::test_a_handoff_started_by_the_webhook_or_by_the_worker_is_the_same_handoff",
        "tests/test_worker.py::test_the_worker_process_imports_no_flask_code",
        "tests/test_worker.py::test_a_stopping_worker_finishes_the_message_in_hand_and_leaves_the_rest"]),
]


def node_ids(items=ITEMS):
    return [node for _, _, nodes in items for node in nodes]


def main(argv):
    chosen = [item for item in ITEMS if not argv or item[0] in argv]
    if not chosen:
        sys.exit(f"no such item; items: {' '.join(i[0] for i in ITEMS)}")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        *node_ids(chosen)], cwd=ROOT)
        results = {}
        for case in ET.parse(report).iter("testcase"):
            test = f"{case.get('classname').replace('.', '/')}.py::{case.get('name').split('[')[0]}"
            failed = any(child.tag in ("failure", "error") for child in case)
            skipped = any(child.tag == "skipped" for child in case)
            results.setdefault(test, []).append("skipped" if skipped else "failed" if failed else "passed")
    print(f"\n{'item':<10} {'passed':>7} {'failed':>7} {'skipped':>8}  what")
    bad = False
    for number, title, nodes in chosen:
        outcomes = [o for node in nodes for o in results.get(node, ["missing"])]
        counts = {k: outcomes.count(k) for k in ("passed", "failed", "skipped", "missing")}
        bad |= bool(counts["failed"] or counts["missing"])
        print(f"{number:<10} {counts['passed']:>7} {counts['failed'] + counts['missing']:>7} {counts['skipped']:>8}  "
              f"{title}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
