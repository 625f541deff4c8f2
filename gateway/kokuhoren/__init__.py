"""国保連 伝送: 受給者異動連絡票 files to the 国保連 mailbox, intake results, 給付実績."""
