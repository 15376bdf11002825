Feature: Tenants, their domains, recipients and routes
  Every tenant domain is accepted and relayed over that tenant's routes, lowest priority first;
  a domain no tenant owns is refused (no open relay).

  Scenario: acme mail goes to acme's primary server first, the backup after it
    Given a message from "alice@example.com" to "bob@acme.example"
    When it is received
    Then it is delivered
    And it is delivered to "127.0.0.1:2626" first
    And it is delivered to "127.0.0.1:2627"

  Scenario Outline: globex receives mail for both of its domains
    Given a message from "alice@example.com" to "<rcpt>"
    When it is received
    Then it is delivered to "127.0.0.1:2626"
    And the copy for "globex" is delivered

    Examples:
      | rcpt                     |
      | sales@globex.example     |
      | hr@globex-corp.example   |

  Scenario Outline: initech accepts listed mailboxes only
    Given a message from "alice@example.com" to "<rcpt>"
    When it is received
    Then the reply code is <code>

    Examples:
      | rcpt                           | code |
      | peter@initech.example          | 250  |
      | samir@initech.example          | 250  |
      | nobody@initech.example         | 550  |

  Scenario: an unknown initech mailbox is refused at RCPT with 5.1.1
    Given a message from "alice@example.com" to "nobody@initech.example"
    When it is received
    Then the recipient "nobody@initech.example" is refused with 550
    And the reply mentions "unknown recipient"
    And it is refused at RCPT

  Scenario: a listed wildcard of a subdomain the tenant does not own is still relaying denied
    # initech lists "*@support.initech.example", but its domains are only initech.example:
    # the gateway owns no such domain, so RCPT is refused before the recipient list is read.
    Given a message from "alice@example.com" to "anyone@support.initech.example"
    When it is received
    Then the reply mentions "relaying denied"

  Scenario: a domain no tenant owns is relaying denied
    Given a message from "alice@example.com" to "someone@elsewhere.example"
    When it is received
    Then it is rejected with 550
    And the reply mentions "relaying denied"

  Scenario: one message for several tenants is decided per tenant
    Given a message from "alice@example.com" to these recipients:
      | address                |
      | bob@acme.example       |
      | sales@globex.example   |
      | michael@initech.example |
    And the subject "Urgent payment today"
    When it is received
    Then the copy for "acme" is tagged
    And the copy for "globex" is delivered
    And the copy for "initech" is tagged
    And the reply code is 250

  Scenario: a tagged message carries the tenant's subject prefix
    Given a message from "alice@example.com" to "sales@globex.example"
    And the body contains "Please confirm your password using the link below."
    When it is received
    Then it is tagged
    And the subject is prefixed with "[SUSPECTED SPAM] "
