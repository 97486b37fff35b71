"""Reads the calendars bantin writes with an independent reader (the `icalendar` package).

Usage: check_calendars.py BANTIN_BINARY WORK_DIR [PUBLIC_DIR_OF_THE_SAMPLE]

Builds a store of three events (a timed one, one over two days with times, a whole-day one
over three days), then checks /calendar.ics, a feed's calendar and each article's: start,
end, time zone, location, the reminder. Then it changes one event's time, builds again and
checks that SEQUENCE rose while UID stayed. With a third argument, every .ics of that built
site must parse and hold at least one event.
"""

import datetime
import os
import pathlib
import subprocess
import sys
import zoneinfo

import icalendar

HCM = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")
failures = 0


def check(ok, what):
    global failures
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures += 1


def article(category, title, lines):
    return (
        f"{category}\n\n{title}\nNgày đăng 02/01/2025 | 08:00\n{lines}\n\n"
        f"Nội dung của bài \"{title}\".\n\nHĐND QUẬN CẦU GIẤY\n"
    )


def events(path):
    cal = icalendar.Calendar.from_ical(pathlib.Path(path).read_bytes())
    return cal, {str(e["UID"]): e for e in cal.walk("VEVENT")}


def main():
    binary, work = sys.argv[1], pathlib.Path(sys.argv[2])
    store, feeds, public = work / "cal-store", work / "cal-feeds", work / "cal-public"
    for d in (store, feeds):
        d.mkdir(parents=True, exist_ok=True)
    (feeds / "tat-ca.toml").write_text('title = "Tất cả tin"\n')
    (feeds / "thong-bao.toml").write_text('title = "Thông báo"\ncategories = ["THÔNG BÁO"]\n')
    (store / "tiep-dan.txt").write_text(article(
        "THÔNG BÁO", "Lịch tiếp công dân",
        "Thời gian: 16/01/2025 | 08:00 - 11:30\n"
        "Địa điểm: Trụ sở tiếp công dân quận, số 36 đường Cầu Giấy"))
    (store / "ky-hop.txt").write_text(article(
        "THÔNG BÁO", "Kỳ họp thứ mười",
        "Thời gian: 6/2/2025 | 8:00 - 7/2/2025 | 17:00\nĐịa điểm: Hội trường tầng 3"))
    (store / "tiep-xuc.txt").write_text(article(
        "TIẾP XÚC CỬ TRI", "Tiếp xúc cử tri", "Thời gian: 10/06/2025 - 12/06/2025"))
    (store / "tin.txt").write_text(article("TIN TỨC", "Không phải sự kiện", ""))
    config = work / "cal.toml"
    config.write_text(
        f'[site]\nbase_url = "https://hdnd.example.vn"\n[store]\ndir = "{store}"\n'
        f'[feeds]\ndir = "{feeds}"\n[templates]\ndir = "{os.getcwd()}/templates"\n'
        f'[output]\ndir = "{public}"\n')

    def build():
        subprocess.run([binary, "--config", str(config), "build"], check=True,
                       stderr=subprocess.DEVNULL)

    build()
    cal, by_uid = events(public / "calendar.ics")
    check(len(by_uid) == 3, f"calendar.ics: 3 events ({len(by_uid)})")
    check(any(c.name == "VTIMEZONE" and str(c["TZID"]) == "Asia/Ho_Chi_Minh"
              for c in cal.subcomponents), "calendar.ics: VTIMEZONE Asia/Ho_Chi_Minh")
    by_title = {str(e["SUMMARY"]): e for e in by_uid.values()}

    e = by_title["Lịch tiếp công dân"]
    start, end = e["DTSTART"].dt, e["DTEND"].dt
    check(start == datetime.datetime(2025, 1, 16, 8, 0, tzinfo=HCM),
          f"timed event: start 16/01/2025 08:00 +07 ({start!r})")
    check(end == datetime.datetime(2025, 1, 16, 11, 30, tzinfo=HCM),
          f"timed event: end 11:30 +07 ({end!r})")
    check(start.utcoffset() == datetime.timedelta(hours=7), "timed event: offset +07:00")
    check(e["DTSTART"].params.get("TZID") == "Asia/Ho_Chi_Minh", "timed event: TZID")
    check(str(e["LOCATION"]) == "Trụ sở tiếp công dân quận, số 36 đường Cầu Giấy",
          f"timed event: location ({e['LOCATION']})")
    check(str(e["URL"]) == "https://hdnd.example.vn/articles/tiep-dan.html", "timed event: URL")
    alarms = e.walk("VALARM")
    check(len(alarms) == 1 and alarms[0]["TRIGGER"].dt == -datetime.timedelta(days=1),
          "timed event: a reminder the day before")

    e = by_title["Kỳ họp thứ mười"]
    check(e["DTSTART"].dt == datetime.datetime(2025, 2, 6, 8, 0, tzinfo=HCM)
          and e["DTEND"].dt == datetime.datetime(2025, 2, 7, 17, 0, tzinfo=HCM),
          "two-day event: 06/02 08:00 to 07/02 17:00")

    e = by_title["Tiếp xúc cử tri"]
    check(e["DTSTART"].params.get("VALUE") == "DATE" and
          e["DTSTART"].dt == datetime.date(2025, 6, 10), "whole-day event: VALUE=DATE start")
    check(e["DTEND"].dt == datetime.date(2025, 6, 13), "whole-day event: exclusive end 13/06")
    check("LOCATION" not in e, "whole-day event without a place: no LOCATION")

    _, feed = events(public / "feeds" / "thong-bao.ics")
    check(sorted(str(e["SUMMARY"]) for e in feed.values()) ==
          ["Kỳ họp thứ mười", "Lịch tiếp công dân"], "a feed's calendar: its categories only")
    _, one = events(public / "articles" / "tiep-dan.ics")
    check(list(one) == [uid for uid, e in by_uid.items()
                        if str(e["SUMMARY"]) == "Lịch tiếp công dân"],
          "an article's calendar: its event, the same UID")
    check(not (public / "articles" / "tin.ics").exists(), "no calendar for a non-event")

    # The time changes: same UID, higher SEQUENCE.
    uid = next(u for u, e in by_uid.items() if str(e["SUMMARY"]) == "Lịch tiếp công dân")
    before = int(by_uid[uid]["SEQUENCE"])
    path = store / "tiep-dan.txt"
    path.write_text(path.read_text().replace("16/01/2025 | 08:00 - 11:30",
                                             "17/01/2025 | 14:00 - 16:00"))
    later = datetime.datetime.now().timestamp() + 3600
    os.utime(path, (later, later))
    build()
    _, after = events(public / "calendar.ics")
    check(uid in after, "after the change: the UID kept")
    changed = after[uid]
    check(changed["DTSTART"].dt == datetime.datetime(2025, 1, 17, 14, 0, tzinfo=HCM),
          "after the change: the new start")
    check(int(changed["SEQUENCE"]) > before,
          f"after the change: SEQUENCE rose ({before} -> {int(changed['SEQUENCE'])})")

    if len(sys.argv) > 3:
        site = pathlib.Path(sys.argv[3])
        files = [site / "calendar.ics", *sorted((site / "feeds").glob("*.ics")),
                 *sorted((site / "articles").rglob("*.ics"))]
        for f in files:
            try:
                cal = icalendar.Calendar.from_ical(f.read_bytes())
                n = len(cal.walk("VEVENT"))
                ok = n > 0 or f.parent.name == "feeds"
                check(ok, f"{f.relative_to(site)}: parses, {n} events")
            except Exception as exc:  # noqa: BLE001 - report any reader error as a failure
                check(False, f"{f.relative_to(site)}: {exc}")

    print(f"calendars: {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
