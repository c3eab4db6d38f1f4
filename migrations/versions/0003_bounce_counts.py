"""bounces: subscriber.soft_bounces (+ last soft-bounced edition), campaign.bounced/complaints

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 10:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    # server_default fills the existing rows (and rows written by code that predates this).
    with op.batch_alter_table('subscriber') as batch_op:
        batch_op.add_column(
            sa.Column('soft_bounces', sa.Integer(), nullable=False, server_default='0')
        )
        batch_op.add_column(
            sa.Column('last_soft_bounce_campaign_id', sa.Integer(), nullable=True)
        )
    with op.batch_alter_table('campaign') as batch_op:
        batch_op.add_column(sa.Column('bounced', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(
            sa.Column('complaints', sa.Integer(), nullable=False, server_default='0')
        )


def downgrade():
    with op.batch_alter_table('campaign') as batch_op:
        batch_op.drop_column('complaints')
        batch_op.drop_column('bounced')
    # Dropping columns rebuilds the table on SQLite: keep its AUTOINCREMENT (ids never reused).
    with op.batch_alter_table(
        'subscriber', table_kwargs={'sqlite_autoincrement': True}
    ) as batch_op:
        batch_op.drop_column('last_soft_bounce_campaign_id')
        batch_op.drop_column('soft_bounces')
