Feature: Content rules
  Every rule of the example policy, on a message built for it. Scores add up against the
  tenant's thresholds (acme: tag 3, quarantine 5; globex: tag 4, quarantine 6;
  initech: tag 3, quarantine 6, reject 10); a rule's own action wins when more severe.

  Background:
    Given the policy in "policies"

  Scenario: a fake overdue invoice is quarantined for acme
    Given a message from "accounts@vendor.example" to "bob@acme.example"
    And the subject "Overdue invoice 4711"
    When it is received
    Then it is quarantined
    And rule "invoice-phish" matched
    And the score is at least 6

  Scenario: acme's invoice rule is acme's only
    Given a message from "accounts@vendor.example" to "sales@globex.example"
    And the subject "Overdue invoice 4711"
    When it is received
    Then rule "invoice-phish" did not match
    And it is delivered

  Scenario: GTUBE is rejected with the rule's reply
    Given a message from "tester@example.com" to "bob@acme.example"
    And the body contains "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    When it is received
    Then it is rejected with 550
    And rule "gtube" matched
    And the reply mentions "GTUBE test message rejected"

  Scenario Outline: executable attachments score 8
    Given a message from "alice@example.com" to "sales@globex.example"
    And an attachment "<file>"
    When it is received
    Then rule "dangerous-attachment" matched
    And the score is 8
    And it is quarantined

    Examples:
      | file         |
      | setup.exe    |
      | run.js       |
      | payload.vbs  |
      | shortcut.lnk |

  Scenario: a disguised executable is rejected whatever the score
    Given a message from "alice@example.com" to "bob@acme.example"
    And an attachment "invoice.pdf.exe"
    When it is received
    Then it is rejected with 550
    And rule "double-extension" matched
    And the reply mentions "disguised executable"

  Scenario: an executable inside a forwarded message is rejected
    Given a message from "alice@example.com" to "bob@acme.example"
    And a forwarded message with an attachment "tool.scr"
    When it is received
    Then it is rejected
    And rule "executable-in-forwarded-message" matched

  Scenario Outline: risky document and container attachments add their score
    Given a message from "alice@example.com" to "michael@initech.example"
    And an attachment "<file>"
    When it is received
    Then rule "<rule>" matched
    And the score is <score>
    And it is <outcome>

    Examples:
      | file          | rule                  | score | outcome |
      | budget.xlsm   | macro-document        | 4     | tagged  |
      | report.docm   | macro-document        | 4     | tagged  |
      | disk.iso      | disk-image-attachment | 5     | tagged  |
      | login.html    | html-attachment       | 3     | tagged  |

  Scenario: an overdue-invoice subject with payment instructions is an invoice lure
    Given a message from "ar@supplier.example" to "peter@initech.example"
    And the subject "Final notice: unpaid invoice"
    And the body contains "Pay immediately to the account below."
    When it is received
    Then rule "invoice-lure" matched
    And the score is 5
    And it is tagged

  Scenario: a gift card request with urgency is business email compromise
    Given a message from "ceo@lookalike.example" to "peter@initech.example"
    And the body:
      """
      I need you to buy five Google Play card vouchers right away.
      Keep it discreet, scratch the back and send me the codes.
      """
    When it is received
    Then rule "gift-card-lure" matched
    And it is quarantined

  Scenario Outline: credential phishing phrases
    Given a message from "it@helpdesk.example" to "bob@acme.example"
    And the body contains "<text>"
    When it is received
    Then rule "credential-phish" matched
    And the score is 4.5
    And it is tagged

    Examples:
      | text                                          |
      | Please verify your account within 24 hours.   |
      | Your mailbox is full: click to upgrade.       |
      | We noticed unusual sign-in activity.          |

  Scenario: a lookalike brand domain in From scores 8
    Given a message from "service@paypa1.example" to "sales@globex.example"
    And the header "From" is "PayPal Service <service@paypa1-secure.com>"
    When it is received
    Then rule "lookalike-sender-domain" matched
    And it is quarantined

  Scenario: an urgent payment subject is tagged for acme
    Given a message from "boss@example.com" to "bob@acme.example"
    And the subject "URGENT payment today"
    When it is received
    Then rule "urgent-payment-request" matched
    And it is tagged
    And the subject is prefixed with "[SPAM] "

  Scenario: sextortion with a bitcoin wallet is quarantined
    Given a message from "hacker@anon.example" to "info@globex.example"
    And the body contains "I recorded you on an adult website; pay to my bitcoin wallet now."
    When it is received
    Then rule "sextortion-bitcoin" matched
    And the score is at least 9
    And it is quarantined

  Scenario: an encrypted archive with its password in the body
    Given a message from "hr@jobs.example" to "bob@acme.example"
    And an attachment "cv.zip"
    And the body contains "The archive password is 1234."
    When it is received
    Then rule "encrypted-archive-lure" matched
    And it is quarantined

  Scenario: a message without any lure is delivered clean
    Given a message from "alice@example.com" to "bob@acme.example"
    And the subject "Minutes of the Tuesday meeting"
    And the body contains "Attached are the minutes; see you next week."
    When it is received
    Then no rule matched
    And the score is 0
    And it is delivered

  Scenario: rules add up: two lures cross acme's quarantine threshold
    Given a message from "boss@example.com" to "bob@acme.example"
    And the subject "Urgent wire transfer"
    And the body contains "Your password expires today, confirm it here."
    When it is received
    Then rule "urgent-payment-request" matched
    And rule "credential-phish" matched
    And the score is 7.5
    And it is quarantined
