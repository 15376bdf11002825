Feature: The sample messages in tests/corpus
  The same files `liveprism plan` replays: their envelope comes from the From/To headers, or from
  the NAME.envelope sidecar when there is one.

  Scenario Outline: each corpus message gets its expected action
    Given the message in "tests/corpus/<file>"
    When it is received
    Then it is <action>

    Examples:
      | file                | action      |
      | clean.eml           | delivered   |
      | gtube.eml           | rejected    |
      | invoice-phish.eml   | quarantined |
      | partner-invoice.eml | delivered   |
      | sextortion.eml      | quarantined |
      | newsletter.eml      | rejected    |
      | ceo-fraud.eml       | tagged      |
      | malformed-mime.eml  | quarantined |
      | globex-order.eml    | delivered   |

  Scenario: structurally broken MIME is held for review
    Given the message in "tests/corpus/malformed-mime.eml"
    When it is received
    Then rule "quarantine-malformed-mime" matched
    And the score is at least 1

  Scenario: the envelope of a corpus message can be given explicitly
    Given the message in "tests/corpus/gtube.eml"
    And a message from "tester@example.com" to "sales@globex.example"
    When it is received
    Then the copy for "globex" is rejected
