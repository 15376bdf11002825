"""Realistic messages for the worked example policy in policies/: one per global rule (and the
rules it fires), and a clean one that fires nothing. Shared by the graph unit tests and the
differential test (explain against a real `liveprism serve`). The messages are built by
`message()` (tests/support/messages.py), whose defaults are this corpus' sender and style."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP

from tests.support.messages import GTUBE, message

FORWARDED = EmailMessage()
FORWARDED["From"] = "Tom <tom@vendor.example>"
FORWARDED["To"] = "carol@sender.example"
FORWARDED["Subject"] = "Tool for the project"
FORWARDED.set_content("Here is the updater we talked about.\n")
FORWARDED.add_attachment(
    b"MZ\x90\x00" + bytes(200), maintype="application", subtype="octet-stream", filename="updater.exe"
)


def _forward() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@sender.example>"
    msg["To"] = "eve@globex.example"
    msg["Subject"] = "Fwd: Tool for the project"
    msg.set_content("See the forwarded message below.\n")
    msg.add_attachment(FORWARDED)
    return msg.as_bytes(policy=SMTP)


ZIP = b"PK\x03\x04" + bytes(100)
EXE = b"MZ\x90\x00" + bytes(200)

EXAMPLE_MESSAGES: dict[str, tuple[bytes, set[str]]] = {
    "gtube": (message(f"Testing the filter:\n\n{GTUBE}\n"), {"gtube"}),
    "dangerous-attachment": (
        message(
            "Please run the attached installer to get the new VPN client.\n",
            attachments=(("vpn-setup.exe", "application/x-msdownload", EXE),),
        ),
        {"dangerous-attachment"},
    ),
    "double-extension": (
        message(
            "Your invoice is attached.\n",
            subject="Invoice 2024-0917",
            attachments=(("Invoice_2024-0917.pdf.scr", "application/octet-stream", EXE),),
        ),
        {"double-extension", "dangerous-attachment"},
    ),
    "executable-in-forwarded-message": (_forward(), {"executable-in-forwarded-message", "dangerous-attachment"}),
    "macro-document": (
        message(
            "Updated budget attached, please enable editing.\n",
            attachments=(("budget-q3.xlsm", "application/vnd.ms-excel.sheet.macroEnabled.12", b"PK\x03\x04"),),
        ),
        {"macro-document"},
    ),
    "disk-image-attachment": (
        message(
            "Shipping documents attached.\n",
            attachments=(("shipment-docs.iso", "application/octet-stream", bytes(512)),),
        ),
        {"disk-image-attachment"},
    ),
    "html-attachment": (
        message(
            "Your secure message is attached. Open it to read.\n",
            attachments=(("SecureMessage.html", "text/html", b"<form action=https://x.example>"),),
        ),
        {"html-attachment"},
    ),
    "invoice-lure": (
        message(
            "Hello,\n\nOur records show the invoice below is still open. Please arrange the wire transfer\n"
            "to settle the balance by Friday.\n\nAccounts Receivable\n",
            subject="Final notice: unpaid invoice #4471",
        ),
        {"invoice-lure"},
    ),
    "gift-card-lure": (
        message(
            "Are you at your desk? I need you to buy 5 Google Play cards for a client, it is urgent.\n"
            "Keep this discreet, I will explain later. Send me the codes from the back of each gift card.\n",
            subject="Quick favour",
            sender="CEO <ceo.office@freemail.example>",
        ),
        {"gift-card-lure"},
    ),
    "credential-phish": (
        message(
            "Dear user,\n\nWe detected a problem with your mailbox. Please verify your account within 24 hours\n"
            "or it will be closed.\n\nIT Helpdesk\n",
            subject="Action required",
        ),
        {"credential-phish"},
    ),
    "lookalike-sender-domain": (
        message(
            "Your account has been limited. Log in to restore access.\n",
            subject="Account limited",
            sender="PayPal Service <service@paypa1.com>",
        ),
        {"lookalike-sender-domain"},
    ),
    "urgent-payment-request": (
        message(
            "Please process it before noon and confirm when done.\n", subject="Urgent wire needed for the supplier"
        ),
        {"urgent-payment-request"},
    ),
    "sextortion-bitcoin": (
        message(
            "I recorded you through your webcam while you were visiting an adult website.\n"
            "Send 0.1 BTC to my bitcoin wallet 1A2b3C4d5E6f or your contacts will see everything.\n",
            subject="Your account was hacked",
        ),
        {"sextortion-bitcoin"},
    ),
    "encrypted-archive-lure": (
        message(
            "The scanned contract is in the attached archive.\nThe archive password is 4471.\n",
            attachments=(("contract-scan.zip", "application/zip", ZIP),),
        ),
        {"encrypted-archive-lure"},
    ),
    "quarantine-malformed-mime": (
        b"From: Nora News <news@sender.example>\r\nTo: bob@globex.example\r\nSubject: Newsletter\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\n"
        b"This month's news.\r\n--x--\r\n",
        {"quarantine-malformed-mime"},
    ),
}

CLEAN = message(
    "Hi team,\n\nAttached are the minutes of Monday's project meeting and the updated schedule.\n"
    "Please review the budget figures before Friday; the next milestone review is on the 12th.\n\n"
    "Thanks,\nNora\n",
    subject="Minutes: project meeting, Monday",
    html="<html><body><p>Hi team,</p><p>Attached are the minutes of Monday's project meeting.</p>"
    "<p>Thanks,<br>Nora</p></body></html>",
    attachments=(
        ("minutes.pdf", "application/pdf", b"%PDF-1.7\n" + bytes(100)),
        ("schedule.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ZIP),
    ),
)
