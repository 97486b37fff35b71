"""Makes one mail of every kind with the real daemon, for the browser and spam checks.

Usage: mail_preview.py BANTIN_BINARY OUT_DIR

Runs `bantin run` with the `file` transport on a copy of the sample store: a subscriber
asks by the command line (a confirmation), an event is published (an alert), a digest tick
passes (a digest), and the event is corrected (a correction). Writes OUT_DIR/{kind}.eml and
OUT_DIR/{kind}.html (the HTML part), kind in alert, digest, confirm, correction.
"""

import email
import email.policy
import pathlib
import shutil
import subprocess
import sys
import time

KINDS = {"a": "alert", "d": "digest", "c": "confirm", "x": "correction"}


def main():
    binary, out = sys.argv[1], pathlib.Path(sys.argv[2])
    work = out / "site"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    repo = pathlib.Path.cwd()
    for d in ("articles", "feeds", "templates"):
        shutil.copytree(repo / d, work / d)
    (work / "bantin.toml").write_text(
        '[site]\nbase_url = "https://hdnd.caugiay.hanoi.gov.vn"\n'
        'address = "Số 36 đường Cầu Giấy, phường Cầu Giấy, Hà Nội"\n'
        'contact = "Văn phòng HĐND, điện thoại 024 3767 0000"\n'
        '[http]\nlisten = "127.0.0.1:0"\nmetrics_listen = ""\n'
        '[mail]\nfrom = "HĐND quận Cầu Giấy <bantin@hdnd.caugiay.hanoi.gov.vn>"\n'
        "alert_delay_secs = 0\nalert_max_age_days = 3650\n"
        '[digest]\ndaily = "*/2 * * * * *"\nweekly = "0 0 0 1 1 * 2099"\n')

    def bantin(*args):
        subprocess.run([binary, "--config", str(work / "bantin.toml"), *args], check=True,
                       stdout=subprocess.DEVNULL)

    bantin("subscribers", "add", "ngay-lap-tuc@gmail.com", "--confirmed")
    bantin("subscribers", "add", "hang-ngay@gmail.com", "--schedule", "daily",
           "--categories", "THÔNG BÁO", "--confirmed")
    log = open(out / "daemon.log", "w")
    daemon = subprocess.Popen([binary, "--config", str(work / "bantin.toml"), "run"],
                              stdout=log, stderr=log)
    outbox = work / "var" / "outbox"

    def wait(what, condition, seconds=30):
        deadline = time.time() + seconds
        while not condition():
            if time.time() > deadline or daemon.poll() is not None:
                raise SystemExit(f"mail preview: timed out waiting for {what}")
            time.sleep(0.1)

    def mails(prefix):
        return sorted(outbox.glob(f"{prefix}-*.eml")) if outbox.exists() else []

    try:
        wait("the daemon to start", lambda: "listening on" in (out / "daemon.log").read_text())
        bantin("subscribers", "add", "moi@gmail.com", "--schedule", "weekly")
        article = (
            "THÔNG BÁO\n\nTriệu tập Kỳ họp thứ mười hai (chuyên đề) HĐND quận Cầu Giấy khóa VI, "
            "nhiệm kỳ 2021 - 2026\nNgày đăng 28/11/2026 | 08:00\n"
            "Thời gian: 10/12/2026 | 08:00 - 11:30\n"
            "Địa điểm: Hội trường tầng 3, trụ sở Quận ủy - HĐND - UBND quận, số 36 đường Cầu Giấy\n\n"
            "Căn cứ Luật Tổ chức chính quyền địa phương, Thường trực HĐND quận thông báo triệu tập "
            "Kỳ họp thứ mười hai. Kỳ họp xem xét các nội dung thuộc thẩm quyền.\n\n"
            "Đề nghị các vị đại biểu HĐND quận sắp xếp thời gian tham dự đầy đủ; tài liệu kỳ họp "
            "được đăng tại https://hdnd.caugiay.hanoi.gov.vn/tai-lieu/ky-hop-thu-muoi-hai-chuyen-de-"
            "khoa-vi-nhiem-ky-2021-2026.pdf\n\nTHƯỜNG TRỰC HĐND QUẬN CẦU GIẤY\n")
        path = work / "articles" / "ky-hop-12.txt"
        tmp = work / "ky-hop-12.tmp"
        tmp.write_text(article)
        tmp.rename(path)
        wait("the alert", lambda: mails("a"))
        wait("the digest", lambda: mails("d"))
        tmp.write_text(article.replace(
            "Thời gian: 10/12/2026 | 08:00 - 11:30",
            "Đính chính: Kỳ họp lùi sang buổi chiều\nThời gian: 10/12/2026 | 14:00 - 17:00")
            .replace("sắp xếp thời gian", "sắp xếp thời gian buổi chiều"))
        tmp.rename(path)
        wait("the correction", lambda: mails("x"))
        wait("the confirmation", lambda: mails("c"))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()

    for prefix, kind in KINDS.items():
        raw = mails(prefix)[0].read_bytes()
        (out / f"{kind}.eml").write_bytes(raw)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        html = msg.get_body(preferencelist=("html",)).get_content()
        (out / f"{kind}.html").write_text(html)
        text = msg.get_body(preferencelist=("plain",)).get_content()
        (out / f"{kind}.txt").write_text(text)
        print(f"mail preview: {kind}: {msg['Subject']}")


if __name__ == "__main__":
    main()
