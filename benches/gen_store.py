#!/usr/bin/env python3
"""Generates a synthetic article store in the council's format.

    gen_store.py N DIR [--seed S] [--feeds FEEDS_DIR]

Writes N articles under DIR/YYYY/MM/, spread over the categories of the sample store and over
the years 2015-2025, with titles and paragraphs made of Vietnamese words. The same N and seed
give the same files. With --feeds, also writes one feed definition per category and one for all
news.
"""

import argparse
import os
import random

CATEGORIES = [
    ("tin-tuc", "TIN TỨC - SỰ KIỆN TIÊU BIỂU"),
    ("ky-hop", "KỲ HỌP HĐND"),
    ("tiep-xuc-cu-tri", "TIẾP XÚC CỬ TRI"),
    ("thong-bao", "THÔNG BÁO"),
    ("hoat-dong", "HOẠT ĐỘNG CỦA HĐND"),
]

WORDS = (
    "hội nghị kỳ họp thường trực đại biểu cử tri phường quận nghị quyết giám sát khảo sát "
    "ngân sách đầu tư công chương trình phối hợp công tác kinh tế xã hội an ninh quốc phòng "
    "tuyên truyền đô thị môi trường vỉa hè rác thải giáo dục y tế văn hóa thể thao lãnh đạo "
    "ủy ban mặt trận tổ quốc nhân dân chính quyền kiến nghị giải quyết kết quả nhiệm vụ năm "
    "quý tháng triển khai thực hiện đánh giá tổng kết báo cáo thông báo kế hoạch tổ chức"
).split()

SIGNATURES = ["HĐND QUẬN CẦU GIẤY", "THƯỜNG TRỰC HĐND QUẬN", "BAN PHÁP CHẾ HĐND QUẬN"]


def sentence(rng, lo, hi):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    words[0] = words[0].capitalize()
    return " ".join(words)


def article(rng, i):
    _, category = rng.choice(CATEGORIES)
    year = rng.randint(2015, 2025)
    month = rng.randint(1, 12)
    day = rng.randint(1, 28)
    hour, minute = rng.randint(6, 20), rng.randint(0, 59)
    title = f"{sentence(rng, 8, 16)} số {i}"
    date = f"{day:02d}/{month:02d}/{year} | {hour:02d}:{minute:02d}"
    if rng.random() < 0.1:
        date = f"{day}/{month}/{year}"
    paragraphs = [
        ". ".join(sentence(rng, 10, 25) for _ in range(rng.randint(2, 5))) + "."
        for _ in range(rng.randint(3, 7))
    ]
    lines = [category, "", title, f"Ngày đăng {date}", ""]
    lines.append("\n\n".join(paragraphs))
    if rng.random() < 0.8:
        lines += ["", rng.choice(SIGNATURES)]
    return year, month, "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("dir")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--feeds", help="also write feed definitions here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for i in range(args.n):
        year, month, text = article(rng, i)
        folder = os.path.join(args.dir, str(year), f"{month:02d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"bai-{i:06d}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    if args.feeds:
        os.makedirs(args.feeds, exist_ok=True)
        with open(os.path.join(args.feeds, "tat-ca.toml"), "w", encoding="utf-8") as f:
            f.write('title = "Tất cả tin"\nlimit = 50\n')
        for name, category in CATEGORIES:
            with open(os.path.join(args.feeds, f"{name}.toml"), "w", encoding="utf-8") as f:
                f.write(f'title = "{category.title()}"\ncategories = ["{category}"]\nlimit = 50\n')


if __name__ == "__main__":
    main()
